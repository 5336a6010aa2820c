"""The config: its schema, loading and checking it, how two configs differ, and the build plans it makes."""

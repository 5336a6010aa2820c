"""Many runs: a recipe's matrix and variant names, parallel jobs, reports, sweeps and analyses."""

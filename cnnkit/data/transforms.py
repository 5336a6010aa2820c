"""Training augmentation by name, from torchvision.transforms.v2, applied to float images.

Transforms that take a ``size`` get the dataset's input size unless the spec sets one.
"""

from torchvision.transforms import v2

from ..registry import TRANSFORMS

TRANSFORMS.register("random_crop", v2.RandomCrop, padding=4,
                    description="random crop of the input size after zero padding (default 4 px)")
TRANSFORMS.register("random_resized_crop", v2.RandomResizedCrop,
                    description="random scale/aspect crop resized to the input size (Inception-style)")
TRANSFORMS.register("horizontal_flip", v2.RandomHorizontalFlip, aliases=("hflip", "flip"),
                    description="mirror left-right with probability p (default 0.5)")
TRANSFORMS.register("color_jitter", v2.ColorJitter, brightness=0.2, contrast=0.2, saturation=0.2,
                    description="random brightness/contrast/saturation (and hue) changes")
TRANSFORMS.register("trivial_augment", v2.TrivialAugmentWide,
                    description="TrivialAugment (Müller & Hutter 2021): one random op of random strength")

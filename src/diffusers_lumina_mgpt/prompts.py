"""The fixed prompt strings of Lumina-mGPT's conversations, defined once (no torch: ShapesWorld's task
generator imports them without loading a model)."""

IMAGE_PLACEHOLDER = "<|image|>"  # marks where an image's token block goes in a message
TEXT_TO_IMAGE_TEMPLATE = "Generate an image of {width}x{height} according to the following prompt:\n{prompt}"
SEGMENTATION_TEXT = "Segmentic segmentation."  # sic: Lumina-mGPT Omni's wording
DEPTH_TEXT = "Depth estimation."

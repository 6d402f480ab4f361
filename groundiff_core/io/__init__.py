"""Input and output on the image side: reading images, the resize-crop and its back-projection, datasets."""

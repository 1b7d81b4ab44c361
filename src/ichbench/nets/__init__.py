"""The networks of the Table 1 rows (autoencoders, GANomaly, the denoising UNet, the ResNet encoder-decoder and
projection nets), each equal to its reference; plain torch modules that know nothing of CT or training.

May import: nothing.
"""

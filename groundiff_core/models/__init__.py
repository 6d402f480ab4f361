"""The latent diffusion model the engine runs (:mod:`.ldm`) and how it is loaded from any source (:mod:`.loading`)."""

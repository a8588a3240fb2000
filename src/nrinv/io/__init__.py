"""Images in, files and diffusers-shaped results out."""

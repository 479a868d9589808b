"""The model's mathematics: relaxations of binary latents (`relaxations`, `gaussian_integral`),
the RBM prior (`prior`), the training objectives including the importance-weighted bound
(`objectives`), the encoder and decoder structures (`networks`), the poster's methods
(`methods`) and the DVAE that joins them (`dvae`). Nothing here reads files or knows of runs."""

//! TPM seed → age identity; decrypting the sealed inputs of the configuration.

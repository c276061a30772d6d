//! Schematic IDs, the Image Factory client and the imager invocation.

//! Talos machine API: the node-side client over machined's Unix socket and the operator-side client over mTLS.

//! The Kubernetes half of the boot: staged server-side apply, secrets, Flux sync, readiness.

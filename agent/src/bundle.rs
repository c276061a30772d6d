//! The bundle the agent installs: lock file, artifact sources (embedded, HTTPS), digest checks.

//! Deploying a loaded project to a vault (placeholder).

//! TODO: project

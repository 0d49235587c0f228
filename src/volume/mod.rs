//! TODO: volume

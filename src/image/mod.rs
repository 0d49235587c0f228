//! TODO: image

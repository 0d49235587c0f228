//! TODO: state

//! TODO: network

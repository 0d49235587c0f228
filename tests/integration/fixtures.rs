//! fixtures tests

//! runtime tests

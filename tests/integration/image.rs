//! image tests

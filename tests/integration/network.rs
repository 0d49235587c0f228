//! network tests

//! load tests

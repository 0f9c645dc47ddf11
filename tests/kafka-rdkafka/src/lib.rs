//! Nothing here: the tests are in `tests/`, run against a real `weir server` process.

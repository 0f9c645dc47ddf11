//! Black-box tests against a real `weir server` process: everything here goes through
//! the binary and its sockets, as a user's would. One test binary for all of them.

mod bad_input;
mod crash;
mod durability;
mod groups;
mod harness;
mod kafka;
mod pressure;
mod restart;
mod startup;
mod support;

//! Load generator for discovery servers (to come).
fn main() {}

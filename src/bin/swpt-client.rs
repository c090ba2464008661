//! `swpt-client`: see `swpt_gateway::programs::client`.

fn main() {
    swpt_gateway::programs::client::main(std::env::args_os().collect())
}

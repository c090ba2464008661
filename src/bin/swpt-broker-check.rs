//! `swpt-broker-check`: see `swpt_gateway::programs::broker_check`.

fn main() {
    swpt_gateway::programs::broker_check::main(std::env::args_os().collect())
}

//! `swpt-doctor`: see `swpt_gateway::programs::doctor`.

fn main() {
    swpt_gateway::programs::doctor::main(std::env::args_os().collect())
}

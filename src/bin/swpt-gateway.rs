//! `swpt-gateway PROGRAM [ARGS...]`: every program in one binary, the
//! container image's (see `swpt_gateway::programs`).

fn main() {
    swpt_gateway::programs::dispatch(std::env::args_os().collect())
}

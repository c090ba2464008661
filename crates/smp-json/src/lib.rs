//! smp-json

//! Time-bounded property runs over decoders of outside input: proptest's generators and
//! shrinking, run for `OVERLAY_FUZZ_SECS` seconds per target (default 2, so CI stays quick;
//! `OVERLAY_FUZZ_SECS=600` for the long runs). Any panic or failed check fails the test with
//! the smallest input proptest can find.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Seconds each target runs.
pub fn seconds() -> u64 {
    std::env::var("OVERLAY_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Runs `check` on inputs from `strategy` until the time is up; prints how many it tried.
pub fn run_for<S>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    const ROUND: u32 = 512;
    let secs = seconds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut cases: u64 = 0;
    loop {
        // A fresh runner (and seed) per round: a runner counts its successes and would stop.
        let mut runner = TestRunner::new(Config {
            cases: ROUND,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("fuzz {name}: {e}");
        }
        cases += u64::from(ROUND);
        if Instant::now() >= deadline {
            break;
        }
    }
    println!("fuzz {name}: {cases} cases in {secs} s, 0 failures");
}

/// `base` with up to `n` bytes overwritten, inserted or removed at random: inputs that look
/// almost valid reach deeper into a decoder than random bytes do.
pub fn mutations(base: Vec<Vec<u8>>, n: usize) -> impl Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let edits = proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..=n);
    (proptest::sample::select(base), edits).prop_map(|(mut bytes, edits)| {
        for (at, byte, kind) in edits {
            let len = bytes.len();
            let i = usize::from(at) % (len + 1);
            match kind {
                0 if i < len => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < len => {
                    bytes.remove(i);
                }
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

//! The evasion suite (issue #10): traffic that tries to get past
//! Tollgate, from real pods (cgroup + netns) to the internet host, with the
//! real agent running. Each case asserts that every byte is counted
//! exactly (agent counters against nftables counters) and, where it is an
//! attack, names the detector that caught it, then prints one row:
//!
//! `EVASION | case | what was tried | agent | nft | lost | detectors`
//!
//! Run with `--nocapture` to see the table. Windows are 1 s and the class
//! learns for 5 s, so each case takes seconds; loops are bounded.
#![forbid(unsafe_code)]

mod bypass;
mod covert;
mod lab;
mod volume;

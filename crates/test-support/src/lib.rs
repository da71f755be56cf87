//! Test doubles shared by Fleetgate's test suites, so that no test reaches the
//! internet: [`fake_llm::FakeLlm`], a local AI provider on port 0.

pub mod fake_llm;

//! Flow configurations as the manager sends them (`create_flow`'s `flow`,
//! `add_output`'s `output`): any JSON text is refused with an error or parsed
//! into a configuration that validates and survives a round trip unchanged.

#![no_main]

use fleetgate_edge::flows::config::{FlowConfig, OutputConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(flow) = FlowConfig::parse(&value) {
        assert!(flow.validate().is_ok());
        let back = serde_json::to_value(&flow).expect("serializable");
        assert_eq!(FlowConfig::parse(&back).as_ref(), Ok(&flow));
    }
    if let Ok(output) = OutputConfig::parse(&value) {
        let back = serde_json::to_value(&output).expect("serializable");
        assert_eq!(OutputConfig::parse(&back).as_ref(), Ok(&output));
    }
});

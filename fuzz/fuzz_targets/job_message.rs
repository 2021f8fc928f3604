//! The job-message decoder never panics, and whatever it accepts re-encodes to a message that
//! decodes to the same value.
#![no_main]

use jobs_core::JobMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(job) = JobMessage::decode(data) {
        let again = JobMessage::decode(&job.encode()).expect("a decoded message re-encodes to a valid one");
        assert_eq!(again, job);
    }
});

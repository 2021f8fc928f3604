//! The catalog parser and validator never panic: any bytes either fail to parse as a whole
//! (not JSON) or yield valid schedules plus one problem per bad item. A catalog that parsed
//! saves and reads back as the same schedules.
#![no_main]

use controller::catalog::{CatalogFile, CatalogPolicy, to_catalog_file, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = serde_json::from_slice::<CatalogFile>(data) else { return };
    let policy = CatalogPolicy::for_tests();
    let catalog = validate(file.into(), &policy);
    let saved = to_catalog_file(&catalog.schedules);
    let again: CatalogFile = serde_json::from_slice(&saved).expect("a saved catalog reads");
    let again = validate(again.into(), &policy);
    assert_eq!(again.schedules, catalog.schedules, "a saved catalog reads back the same");
});

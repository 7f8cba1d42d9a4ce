//! Unit tests of the scan's bookkeeping (shards, parts, merge); the engines are tested on real
//! models in tests/scan_*.rs.

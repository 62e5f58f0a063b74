//! The engine as a library: several submissions share one pool of real workers, each gets
//! exactly its own results, and one given up early costs the others nothing.

use std::collections::HashMap;
use std::io::Cursor;

use corral::{EngineConfig, EngineEnd, InputFormat, Service};

use crate::util::bin;

fn service() -> Service {
    Service::start(
        EngineConfig::native(bin("corral-worker"), 2),
        InputFormat::json(2),
    )
}

fn jobs(client: usize, n: usize) -> Cursor<Vec<u8>> {
    let lines: String = (0..n)
        .map(|i| {
            format!("{{\"id\": \"{client}-{i}\", \"task\": \"sum_squares\", \"input\": [{i}]}}\n")
        })
        .collect();
    Cursor::new(lines.into_bytes())
}

#[test]
fn submissions_sharing_one_pool_each_get_exactly_their_own_results() {
    let mut service = service();
    let clients = 8;
    let n = 2_000;
    let readers: Vec<_> = (0..clients)
        .map(|client| {
            let results = service.submit(jobs(client, n));
            std::thread::spawn(move || results.collect::<Vec<_>>())
        })
        .collect();
    for (client, reader) in readers.into_iter().enumerate() {
        let mut seen = HashMap::new();
        for line in reader.join().unwrap() {
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(value["ok"], true, "{value}");
            let id = value["id"].as_str().unwrap().to_owned();
            let (owner, i) = id.split_once('-').unwrap();
            assert_eq!(owner, client.to_string(), "a result of another client");
            let i: u64 = i.parse().unwrap();
            assert_eq!(value["output"], i * i);
            *seen.entry(id).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), n, "client {client} misses results");
        assert!(seen.values().all(|&count| count == 1), "a duplicate");
    }
    assert_eq!(service.shutdown().end, EngineEnd::Completed);
}

#[test]
fn a_submission_given_up_early_costs_the_others_nothing() {
    let mut service = service();
    // Jobs of a millisecond of CPU each: once one has run, most of the others wait in the
    // queue (however busy the machine, reading them is much faster than running them).
    let spins: String = (0..20_000)
        .map(|i| format!("{{\"id\": \"0-{i}\", \"task\": \"spin\", \"input\": 1}}\n"))
        .collect();
    let mut abandoned = service.submit(Cursor::new(spins.into_bytes()));
    let kept = service.submit(jobs(1, 5_000));
    assert!(abandoned.next().is_some());
    service.cancel(&abandoned);
    drop(abandoned);
    assert_eq!(kept.count(), 5_000);
    let report = service.shutdown();
    assert_eq!(report.end, EngineEnd::Completed);
    // What it had queued was dropped, and counted.
    assert!(report.counters.dropped > 0, "{:?}", report.counters);
    assert_eq!(report.counters.not_run, 0);
}

#[test]
fn answers_read_alone_and_in_the_shared_set_each_come_once() {
    // One worker's answers on a thread of their own, the other two's in the receiver set.
    let mut config = EngineConfig::native(bin("corral-worker"), 3);
    config.pool.own_readers = 1;
    let mut service = Service::start(config, InputFormat::json(2));
    let n = 20_000;
    let mut seen = HashMap::new();
    for line in service.submit(jobs(0, n)) {
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["ok"], true, "{value}");
        *seen
            .entry(value["id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|&count| count == 1), "a duplicate");
    assert_eq!(service.shutdown().end, EngineEnd::Completed);
}

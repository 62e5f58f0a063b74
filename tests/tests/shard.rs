//! `corral run --shard I/N` and `corral merge`: the shards of a job file together answer each
//! job exactly once, as one run would; merge checks that and says what is missing or repeated;
//! `--shard auto` reads a Slurm array's or a Kubernetes Indexed Job's variables, and refuses
//! to guess.

use std::path::{Path, PathBuf};

use crate::util::*;

/// A job file with jobs with and without ids, blank and malformed lines, and a line too long.
fn mixed_jobs(dir: &Path, n: u64) -> PathBuf {
    let lines = (0..n).map(|i| match i % 7 {
        0 => format!(r#"{{"task":"sum_squares","input":[{i}]}}"#),
        1 => String::new(),
        2 => "not json".to_owned(),
        3 => format!(r#"{{"id":"x{i}","task":"nope"}}"#),
        4 => format!(
            r#"{{"id":"long{i}","task":"sum_squares","input":[{}]}}"#,
            "1,".repeat(200) + "1"
        ),
        _ => format!(r#"{{"id":"j{i}","task":"sum_squares","input":[{i},2]}}"#),
    });
    write_jobs(dir, "jobs.jsonl", lines)
}

#[test]
fn the_shards_merged_are_the_unsharded_run_by_line_and_by_id() {
    let dir = temp_dir();
    let jobs = mixed_jobs(dir.path(), 700);
    let whole = Run::corral(["run", "-j", "2", "--max-job-bytes", "256"])
        .args([&jobs])
        .output();
    let expected = comparable(whole.results());
    for by in ["line", "id"] {
        let template = dir.path().join(format!("{by}.{{shard}}.jsonl"));
        for i in 1..=4 {
            // Status 1: some of the shard's lines are failures.
            let _ = Run::corral(["run", "-j", "2", "--max-job-bytes", "256", "--shard-by", by])
                .args(["--shard", &format!("{i}/4"), "-o"])
                .args([&template, &jobs])
                .output();
        }
        let shards: Vec<PathBuf> = (1..=4)
            .map(|i| dir.path().join(format!("{by}.{i}.jsonl")))
            .collect();
        let sizes: Vec<usize> = shards.iter().map(|p| read_results(p).len()).collect();
        assert!(sizes.iter().all(|&n| n > 0), "{by}: {sizes:?}");
        let merged = Run::corral(["merge", "--jobs"])
            .args([&jobs])
            .args(&shards)
            .output();
        merged.expect_code(0);
        assert!(
            merged
                .stderr
                .contains("600 jobs, 600 results written; 0 missing"),
            "{}",
            merged.stderr
        );
        assert_eq!(comparable(merged.results()), expected, "{by}");
    }
}

#[test]
fn merge_reports_the_missing_and_the_duplicated_with_their_lines() {
    let dir = temp_dir();
    let jobs = mixed_jobs(dir.path(), 70);
    let out = |i: u32| dir.path().join(format!("r.{i}.jsonl"));
    for i in 1..=3 {
        Run::corral([
            "run",
            "--max-job-bytes",
            "256",
            "--shard",
            &format!("{i}/3"),
            "-o",
        ])
        .args([dir.path().join("r.{shard}.jsonl"), jobs.clone()])
        .output();
    }
    // Shard 2 missing, shard 1 given twice.
    let merged = Run::corral(["merge", "--jobs"])
        .args([&jobs, &out(1), &out(1), &out(3)])
        .output();
    merged.expect_code(1);
    let shard2 = read_results(&out(2)).len();
    assert!(
        merged
            .stderr
            .contains(&format!("{shard2} jobs have no result (lines 5, 8, 11")),
        "{}",
        merged.stderr
    );
    let shard1 = read_results(&out(1)).len();
    assert!(
        merged.stderr.contains(&format!("{shard1} results repeat")),
        "{}",
        merged.stderr
    );
    assert_eq!(
        merged.results().len(),
        60 - shard2,
        "each result written once"
    );
    // Results of another input are not this one's.
    let other = write_jobs(
        dir.path(),
        "other.jsonl",
        [r#"{"id":"zz","task":"sum_squares"}"#.to_string()],
    );
    let merged = Run::corral(["merge", "--jobs"])
        .args([&other, &out(1)])
        .output();
    merged.expect_code(1);
    assert!(
        merged.stderr.contains("answer no job of the input"),
        "{}",
        merged.stderr
    );
}

#[test]
fn a_shard_resumes_alone_and_the_merge_is_complete() {
    let dir = temp_dir();
    let jobs = write_jobs(dir.path(), "jobs.jsonl", square_jobs(2_000, 0));
    let template = dir.path().join("r.{shard}.jsonl");
    let run = |i: u32, resume: bool| {
        let mut run = Run::corral_faulty(["run", "--shard", &format!("{i}/2")]).args([
            "-o".as_ref(),
            template.as_os_str(),
            jobs.as_os_str(),
        ]);
        if resume {
            run = run.args(["--resume"]);
        }
        run.output().expect_code(0);
    };
    run(1, false);
    run(2, false);
    // Shard 2 lost half its results (a node that died), and runs again with --resume.
    let second = dir.path().join("r.2.jsonl");
    let text = std::fs::read_to_string(&second).unwrap();
    let kept: Vec<&str> = text.lines().take(400).collect();
    std::fs::write(&second, kept.join("\n") + "\n{\"id\":7,\"ok\"").unwrap();
    run(2, true);
    let merged = Run::corral(["merge", "--jobs"])
        .args([&jobs, &dir.path().join("r.1.jsonl"), &second])
        .output();
    merged.expect_code(0);
    assert_eq!(merged.results_by_id().len(), 2_000);
}

#[test]
fn shard_auto_reads_slurm_and_kubernetes_and_refuses_to_guess() {
    let dir = temp_dir();
    let jobs = write_jobs(
        dir.path(),
        "jobs.jsonl",
        (0..12).map(|i| format!(r#"{{"id":{i},"task":"sum_squares","input":[{i}]}}"#)),
    );
    let ids = |out: &Output| {
        let mut ids: Vec<u64> = out
            .results()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    // --array=10-40:10, task 30: the third of four; lines 3, 7 and 11.
    let slurm = Run::corral(["run", "--shard", "auto"])
        .args([&jobs])
        .env("SLURM_ARRAY_TASK_ID", "30")
        .env("SLURM_ARRAY_TASK_MIN", "10")
        .env("SLURM_ARRAY_TASK_MAX", "40")
        .env("SLURM_ARRAY_TASK_STEP", "10")
        .env("SLURM_ARRAY_TASK_COUNT", "4")
        .output();
    slurm.expect_code(0);
    assert_eq!(ids(&slurm), [2, 6, 10]);
    let k8s = Run::corral(["run", "--shard", "auto", "--shards", "6"])
        .args([&jobs])
        .env("JOB_COMPLETION_INDEX", "0")
        .output();
    k8s.expect_code(0);
    assert_eq!(ids(&k8s), [0, 6]);
    for (env, says) in [
        (vec![], "neither"),
        (vec![("JOB_COMPLETION_INDEX", "1")], "--shards N"),
        (vec![("SLURM_ARRAY_TASK_ID", "2")], "SLURM_ARRAY_TASK_MIN"),
    ] {
        let mut run = Run::corral(["run", "--shard", "auto"]).args([&jobs]);
        for (k, v) in env {
            run = run.env(k, v);
        }
        let out = run.output();
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "nothing ran");
    }
    let out = Run::corral(["run", "-o"])
        .args([dir.path().join("r.{shard}.jsonl"), jobs.clone()])
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("no --shard"), "{}", out.stderr);
    let out = Run::corral(["run", "--shard", "5/4"])
        .args([&jobs])
        .output();
    out.expect_code(2);
    assert!(out.stderr.contains("numbered 1 to 4"), "{}", out.stderr);
}

#[test]
fn merge_keys_lines_too_large_for_the_run_by_line_even_when_they_share_an_id() {
    let dir = temp_dir();
    let long = format!(
        r#"{{"id":"dup","task":"sum_squares","input":[{}]}}"#,
        "1,".repeat(100) + "1"
    );
    let lines = [
        long.clone(),
        r#"{"id":1,"task":"sum_squares","input":[1]}"#.to_owned(),
        long,
        r#"{"id":2,"task":"sum_squares","input":[2]}"#.to_owned(),
    ];
    let jobs = write_jobs(dir.path(), "jobs.jsonl", lines);
    let shards: Vec<PathBuf> = (1..=2)
        .map(|i| dir.path().join(format!("{i}.jsonl")))
        .collect();
    for (i, shard) in shards.iter().enumerate() {
        let _ = Run::corral(["run", "--max-job-bytes", "64", "--shard"])
            .args([format!("{}/2", i + 1)])
            .args(["-o".as_ref(), shard.as_os_str(), jobs.as_os_str()])
            .output();
    }
    let merged = Run::corral(["merge", "--max-job-bytes", "64", "--jobs"])
        .args([&jobs])
        .args(&shards)
        .output();
    merged.expect_code(0);
    assert_eq!(merged.results().len(), 4, "{}", merged.stderr);
    assert!(
        merged
            .stderr
            .contains("4 jobs, 4 results written; 0 missing"),
        "{}",
        merged.stderr
    );
}

#[test]
fn the_shards_of_a_run_of_lines_merge_with_lines() {
    let dir = temp_dir();
    let files = dir.path().join("files.txt");
    // Lines that look like jobs, blank ones, and a file name that is not UTF-8.
    let mut text = Vec::new();
    for i in 0..300 {
        match i % 5 {
            0 => text.extend_from_slice(format!("{{\"id\":{i}}}\n").as_bytes()),
            1 => text.push(b'\n'),
            2 => text.extend_from_slice(b"caf\xe9.txt\n"),
            _ => text.extend_from_slice(format!("f{i}.txt\n").as_bytes()),
        }
    }
    std::fs::write(&files, text).unwrap();
    let template = dir.path().join("r.{shard}.jsonl");
    for i in 1..=3 {
        Run::corral(["run", "-j", "2", "--lines", "--exec", "true"])
            .args(["--shard", &format!("{i}/3"), "-o"])
            .args([&template, &files])
            .output()
            .expect_code(0);
    }
    let shards: Vec<PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("r.{i}.jsonl")))
        .collect();
    let merged = Run::corral(["merge", "--lines", "--jobs"])
        .args([&files])
        .args(&shards)
        .output();
    merged.expect_code(0);
    assert!(
        merged
            .stderr
            .contains("240 jobs, 240 results written; 0 missing"),
        "{}",
        merged.stderr
    );
    // Without --lines, merge reads them as job lines, and says they do not fit.
    Run::corral(["merge", "--jobs"])
        .args([&files])
        .args(&shards)
        .output()
        .expect_code(1);
}

//! `--shard I/N`: one of N supervisors, each on its own node, runs only its share of a job
//! file, decided from the line alone so that every shard computes the same split without
//! talking to the others, and the shards' results together answer every job exactly once.
//!
//! - by line (the default): line L (counted from 1 over every input, as in results) is shard
//!   `(L - 1) % N + 1`. Another shard's line is skipped once framed, without being parsed.
//! - by id: a job with an id is shard `digest(id) % N + 1`, the digest being the one `--resume`
//!   keys results by (so `"a"` and `"\u0061"` are one id); a job without an id and a line that
//!   is not a job go by line. The id is read where lines usually have it, first
//!   (`{"id": ...`), without parsing the rest; a line that puts it elsewhere is scanned for it.
//!   Only the shard's own lines are then parsed into jobs.
//!
//! `--shard auto` reads the batch system's own variables: a Slurm job array
//! (`SLURM_ARRAY_TASK_ID`, `_MIN`, `_STEP`, `_COUNT`) or a Kubernetes Indexed Job
//! (`JOB_COMPLETION_INDEX`, with the count from `--shards N` or `CORRAL_SHARDS`, since
//! Kubernetes does not expose it). A variable missing or inconsistent is an error: never a
//! silent run of everything.

use std::fmt;
use std::str::FromStr;

use crate::resume::ResultDigest;

/// How lines are split between shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShardBy {
    /// By line number: skipped lines are not parsed at all.
    #[default]
    Line,
    /// By a digest of the job's id (the line number for a job without one): a job keeps its
    /// shard when lines are added or reordered.
    Id,
}

/// One shard of N, 1-based as the command line writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which one, from 1.
    pub index: u32,
    /// Of how many.
    pub count: u32,
    /// How lines are split.
    pub by: ShardBy,
}

impl Shard {
    /// Shard `index` (from 1) of `count`.
    pub fn new(index: u32, count: u32, by: ShardBy) -> Result<Shard, String> {
        if count == 0 {
            return Err("the number of shards must be at least 1".into());
        }
        if index == 0 || index > count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards are numbered 1 to {count}"
            ));
        }
        Ok(Shard { index, count, by })
    }

    /// Whether line `line` (from 1) is this shard's, by its number.
    pub fn owns_line(&self, line: u64) -> bool {
        (line - 1) % u64::from(self.count) == u64::from(self.index - 1)
    }

    /// Whether a job whose id has this digest is this shard's.
    pub fn owns_id(&self, id: ResultDigest) -> bool {
        id.spread() % u64::from(self.count) == u64::from(self.index - 1)
    }

    /// `template` with `{shard}` replaced by the shard's number.
    pub fn name(&self, template: &str) -> String {
        template.replace("{shard}", &self.index.to_string())
    }
}

/// The raw id of a job line that opens with it (`{"id": ...`, the usual way to write one),
/// found without parsing the rest of the line; `None` when the line starts otherwise, and the
/// caller scans it whole. The split only needs every node to decide alike, which this does:
/// it reads the same bytes of the same line.
pub fn leading_id(line: &[u8]) -> Option<&[u8]> {
    let skip = |at: usize| {
        at + line[at.min(line.len())..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count()
    };
    let mut at = skip(0);
    if line.get(at) != Some(&b'{') {
        return None;
    }
    at = skip(at + 1);
    if !line[at..].starts_with(b"\"id\"") {
        return None;
    }
    at = skip(at + 4);
    if line.get(at) != Some(&b':') {
        return None;
    }
    let start = skip(at + 1);
    let rest = line.get(start..)?;
    let len = match rest.first()? {
        b'"' => {
            let mut i = 1;
            loop {
                match rest.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break i + 1,
                    _ => i += 1,
                }
            }
        }
        b'-' | b'0'..=b'9' => rest
            .iter()
            .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            .count(),
        _ => return None,
    };
    Some(&rest[..len])
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--shard` says: a shard, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    /// `I/N`.
    Given {
        /// I.
        index: u32,
        /// N.
        count: u32,
    },
    /// From the batch system's variables.
    Auto,
}

impl FromStr for ShardArg {
    type Err = String;

    fn from_str(text: &str) -> Result<ShardArg, String> {
        if text == "auto" {
            return Ok(ShardArg::Auto);
        }
        let usage =
            || format!("{text:?} is not a shard: write I/N (e.g. 2/8, numbered from 1) or auto");
        let (index, count) = text.split_once('/').ok_or_else(usage)?;
        let index: u32 = index.trim().parse().map_err(|_| usage())?;
        let count: u32 = count.trim().parse().map_err(|_| usage())?;
        Shard::new(index, count, ShardBy::Line)?;
        Ok(ShardArg::Given { index, count })
    }
}

impl ShardArg {
    /// The shard this process runs: as given, or from the environment `var` reads (`shards`
    /// is `--shards N`, the count Kubernetes does not give).
    pub fn resolve(
        self,
        by: ShardBy,
        shards: Option<u32>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Shard, String> {
        match self {
            ShardArg::Given { index, count } => {
                if shards.is_some_and(|n| n != count) {
                    return Err(format!(
                        "--shard {index}/{count} and --shards {} disagree",
                        shards.unwrap_or_default()
                    ));
                }
                Shard::new(index, count, by)
            }
            ShardArg::Auto => from_env(by, shards, var),
        }
    }
}

/// A variable as a number, or why not.
fn number(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<u64>, String> {
    match var(name) {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={text:?} is not a number")),
    }
}

fn from_env(
    by: ShardBy,
    shards: Option<u32>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Shard, String> {
    let slurm = number(&var, "SLURM_ARRAY_TASK_ID")?;
    let k8s = number(&var, "JOB_COMPLETION_INDEX")?;
    let shards = match shards {
        Some(n) => Some(u64::from(n)),
        None => number(&var, "CORRAL_SHARDS")?,
    };
    match (slurm, k8s) {
        (Some(_), Some(_)) => Err(
            "--shard auto: both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set; give --shard I/N"
                .into(),
        ),
        (None, None) => Err(
            "--shard auto: neither a Slurm job array (SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job (JOB_COMPLETION_INDEX) is running this; give --shard I/N"
                .into(),
        ),
        (Some(id), None) => {
            let need = |name: &str| {
                number(&var, name)?.ok_or_else(|| {
                    format!("--shard auto: SLURM_ARRAY_TASK_ID is set but {name} is not")
                })
            };
            let min = need("SLURM_ARRAY_TASK_MIN")?;
            let count = need("SLURM_ARRAY_TASK_COUNT")?;
            let step = match number(&var, "SLURM_ARRAY_TASK_STEP")? {
                None => 1,
                Some(0) => {
                    return Err(
                        "--shard auto: SLURM_ARRAY_TASK_STEP is 0, which no Slurm array has; give --shard I/N"
                            .into(),
                    );
                }
                Some(step) => step,
            };
            let max = number(&var, "SLURM_ARRAY_TASK_MAX")?;
            if id < min || (id - min) % step != 0 {
                return Err(format!(
                    "--shard auto: task {id} is not on the array's steps (min {min}, step {step}); an array with uneven gaps needs --shard I/N"
                ));
            }
            let index = (id - min) / step + 1;
            if index > count || max.is_some_and(|max| min + (count - 1) * step != max) {
                return Err(format!(
                    "--shard auto: the array's min {min}, step {step}, count {count} and max {} disagree (an array with uneven gaps, such as --array=1,4,5, needs --shard I/N)",
                    max.map_or("unset".into(), |m| m.to_string())
                ));
            }
            if shards.is_some_and(|n| n != count) {
                return Err(format!(
                    "--shard auto: the Slurm array has {count} tasks but --shards (or CORRAL_SHARDS) says {}",
                    shards.unwrap_or_default()
                ));
            }
            shard(index, count, by)
        }
        (None, Some(index)) => {
            let count = shards.ok_or(
                "--shard auto: a Kubernetes Indexed Job does not say how many indexes it has: give --shards N (its completions) or set CORRAL_SHARDS",
            )?;
            if index >= count {
                return Err(format!(
                    "--shard auto: JOB_COMPLETION_INDEX={index} is not below the {count} shards"
                ));
            }
            shard(index + 1, count, by)
        }
    }
}

fn shard(index: u64, count: u64, by: ShardBy) -> Result<Shard, String> {
    let index = u32::try_from(index).map_err(|_| format!("shard {index} is too large"))?;
    let count = u32::try_from(count).map_err(|_| format!("{count} shards are too many"))?;
    Shard::new(index, count, by)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::id_digest;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// Which shard takes each of `lines` lines, by line, for every I of N.
    fn owners(lines: u64, count: u32, by: ShardBy) -> Vec<Vec<u32>> {
        (1..=lines)
            .map(|line| {
                (1..=count)
                    .filter(|&i| {
                        let shard = Shard::new(i, count, by).unwrap();
                        match by {
                            ShardBy::Line => shard.owns_line(line),
                            ShardBy::Id => shard
                                .owns_id(id_digest(format!("\"job-{line}\"").as_bytes()).unwrap()),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_line_has_exactly_one_shard_for_every_n() {
        for by in [ShardBy::Line, ShardBy::Id] {
            for count in 1..=9 {
                // Uneven sizes, and more shards than lines.
                for lines in [0, 1, 5, 7, 100, 1001] {
                    let owners = owners(lines, count, by);
                    assert!(
                        owners.iter().all(|o| o.len() == 1),
                        "{by:?} {count} {lines}"
                    );
                    if by == ShardBy::Line && lines >= u64::from(count) {
                        // By line, sizes differ by at most one.
                        let mut sizes = vec![0u64; count as usize];
                        for o in &owners {
                            sizes[o[0] as usize - 1] += 1;
                        }
                        let (min, max) = (sizes.iter().min(), sizes.iter().max());
                        assert!(max.unwrap() - min.unwrap() <= 1, "{sizes:?}");
                    }
                }
            }
        }
        // More shards than lines: the shards past the lines get none.
        let owners = owners(3, 8, ShardBy::Line);
        assert_eq!(owners, [[1], [2], [3]]);
        // By id, 1000 ids spread over 4 shards roughly evenly.
        let mut sizes = [0; 4];
        for o in self::owners(1000, 4, ShardBy::Id) {
            sizes[o[0] as usize - 1] += 1;
        }
        assert!(sizes.iter().all(|&n| (200..300).contains(&n)), "{sizes:?}");
    }

    #[test]
    fn the_split_is_fixed_so_every_node_computes_the_same() {
        let shard = Shard::new(2, 3, ShardBy::Id).unwrap();
        let ids: Vec<bool> = ["\"a\"", "\"b\"", "1", "2", "\"\\u0061\""]
            .iter()
            .map(|id| shard.owns_id(id_digest(id.as_bytes()).unwrap()))
            .collect();
        // "a" and "\u0061" are one id: one shard.
        assert_eq!(ids[0], ids[4]);
        assert_eq!(ids, [ids[0], ids[1], ids[2], ids[3], ids[0]]);
        // The values themselves are pinned: a change would split differently across versions.
        let spread: Vec<u64> = ["\"a\"", "1"]
            .iter()
            .map(|id| id_digest(id.as_bytes()).unwrap().spread() % 1000)
            .collect();
        assert_eq!(spread, PINNED);
    }
    const PINNED: [u64; 2] = [33, 798];

    #[test]
    fn a_leading_id_is_found_as_written() {
        let id = |line: &str| {
            leading_id(line.as_bytes()).map(|id| String::from_utf8_lossy(id).into_owned())
        };
        assert_eq!(id(r#"{"id":17,"task":"t"}"#).as_deref(), Some("17"));
        assert_eq!(
            id(r#" { "id" : "a\"b" , "task":"t"}"#).as_deref(),
            Some(r#""a\"b""#)
        );
        assert_eq!(id(r#"{"id":-1.5e3}"#).as_deref(), Some("-1.5e3"));
        assert_eq!(
            id(r#"{"task":"t","id":3}"#),
            None,
            "not leading: scanned instead"
        );
        assert_eq!(id(r#"{"id":{"x":1}}"#), None);
        assert_eq!(id(r#"{"id":"open"#), None);
        assert_eq!(id("not json"), None);
    }

    #[test]
    fn shards_parse_and_bad_ones_say_why() {
        assert_eq!("2/8".parse(), Ok(ShardArg::Given { index: 2, count: 8 }));
        assert_eq!("auto".parse(), Ok(ShardArg::Auto));
        for bad in ["0/4", "5/4", "1/0", "x", "1/", "-1/4", "1-4"] {
            assert!(bad.parse::<ShardArg>().is_err(), "{bad}");
        }
        assert!(
            "0/4"
                .parse::<ShardArg>()
                .unwrap_err()
                .contains("numbered 1 to 4")
        );
        let given = ShardArg::Given { index: 1, count: 4 };
        assert!(given.resolve(ShardBy::Line, Some(3), env(&[])).is_err());
        assert_eq!(
            Shard::new(3, 4, ShardBy::Line)
                .unwrap()
                .name("out.{shard}.jsonl"),
            "out.3.jsonl"
        );
    }

    #[test]
    fn slurm_arrays_need_not_start_at_zero_nor_be_contiguous() {
        let slurm = |id: &str, min: &str, step: &str, count: &str, max: &str| {
            ShardArg::Auto.resolve(
                ShardBy::Line,
                None,
                env(&[
                    ("SLURM_ARRAY_TASK_ID", id),
                    ("SLURM_ARRAY_TASK_MIN", min),
                    ("SLURM_ARRAY_TASK_STEP", step),
                    ("SLURM_ARRAY_TASK_COUNT", count),
                    ("SLURM_ARRAY_TASK_MAX", max),
                ]),
            )
        };
        let shard = |index, count| Ok(Shard::new(index, count, ShardBy::Line).unwrap());
        // --array=1-4
        assert_eq!(slurm("1", "1", "1", "4", "4"), shard(1, 4));
        assert_eq!(slurm("4", "1", "1", "4", "4"), shard(4, 4));
        // --array=0-30:10 (0, 10, 20, 30)
        assert_eq!(slurm("20", "0", "10", "4", "30"), shard(3, 4));
        // --array=5-7
        assert_eq!(slurm("5", "5", "1", "3", "7"), shard(1, 3));
        // A step of 0 is no array's.
        assert!(
            slurm("1", "1", "0", "2", "2")
                .unwrap_err()
                .contains("STEP is 0")
        );
        // Off the steps, and an array with uneven gaps (--array=1,4,5: min 1, max 5, count 3).
        assert!(slurm("15", "0", "10", "4", "30").is_err());
        assert!(
            slurm("4", "1", "1", "3", "5")
                .unwrap_err()
                .contains("--shard I/N")
        );
        // Missing pieces.
        let partial =
            ShardArg::Auto.resolve(ShardBy::Line, None, env(&[("SLURM_ARRAY_TASK_ID", "3")]));
        assert!(partial.unwrap_err().contains("SLURM_ARRAY_TASK_MIN"));
        let garbage = ShardArg::Auto.resolve(
            ShardBy::Line,
            None,
            env(&[("SLURM_ARRAY_TASK_ID", "three")]),
        );
        assert!(garbage.unwrap_err().contains("not a number"));
    }

    #[test]
    fn kubernetes_indexes_need_a_count_and_nothing_is_a_clear_error() {
        let k8s = |index: &str, shards: Option<u32>, count_var: Option<&str>| {
            let mut pairs = vec![("JOB_COMPLETION_INDEX", index)];
            if let Some(n) = count_var {
                pairs.push(("CORRAL_SHARDS", n));
            }
            ShardArg::Auto.resolve(ShardBy::Id, shards, env(&pairs))
        };
        assert_eq!(
            k8s("0", Some(4), None),
            Ok(Shard::new(1, 4, ShardBy::Id).unwrap())
        );
        assert_eq!(
            k8s("3", None, Some("4")),
            Ok(Shard::new(4, 4, ShardBy::Id).unwrap())
        );
        assert!(k8s("0", None, None).unwrap_err().contains("--shards N"));
        assert!(k8s("4", Some(4), None).unwrap_err().contains("not below"));
        let none = ShardArg::Auto.resolve(ShardBy::Line, None, env(&[]));
        assert!(none.unwrap_err().contains("neither"));
        let both = ShardArg::Auto.resolve(
            ShardBy::Line,
            Some(2),
            env(&[("JOB_COMPLETION_INDEX", "0"), ("SLURM_ARRAY_TASK_ID", "1")]),
        );
        assert!(both.unwrap_err().contains("both"));
    }
}

//! etcdctl's cluster commands against a 3-member `lookout store` cluster,
//! and a member replaced with `member remove` / `member add`.

use std::time::Duration;

use lookout_proto::pb::{PutRequest, RangeRequest};
use lookout_testkit::cluster::{Cluster, status};
use lookout_testkit::{etcdctl, wait_for};

use crate::cluster::{converged_hashes, kv, program};

fn run(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Waits until every member lists every member with its client URL
/// (members publish their name and client URLs after starting).
async fn wait_published(c: &mut Cluster, names: &[&str]) {
    let eps = c.endpoints_arg();
    let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wait_for("members published", Duration::from_secs(30), || {
        let (eps, want) = (eps.clone(), want.clone());
        async move {
            let out = etcdctl(&eps, &["member", "list"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            let ok = lines.len() == want.len()
                && want.iter().all(|n| {
                    lines.iter().any(|l| {
                        l.contains(&format!(", {n}, "))
                            && l.contains(", started, ")
                            && l.contains(", 127.0.0.1:")
                            && !l.trim_end().ends_with(',')
                    })
                });
            ok.then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_commands_work() {
    let mut c = Cluster::start(program(), 3, &[]).await;
    wait_published(&mut c, &["m0", "m1", "m2"]).await;
    let one = c.members[0].endpoint.clone();

    let table = run(&one, &["member", "list", "-w", "table"]);
    for m in &c.members {
        assert!(table.contains(&m.name), "{table}");
        assert!(table.contains(&m.peer_url), "{table}");
        assert!(table.contains(&m.endpoint), "{table}");
    }
    assert!(table.contains("| started |"), "{table}");

    let st = run(&one, &["endpoint", "status", "--cluster", "-w", "table"]);
    for m in &c.members {
        assert!(st.contains(&m.endpoint), "{st}");
    }
    let leaders = st.lines().filter(|l| l.contains("|      true |")).count();
    assert_eq!(leaders, 1, "exactly one leader:\n{st}");
    assert!(st.contains("3.4.0"), "{st}");

    let health = etcdctl(&one, &["endpoint", "health", "--cluster"]);
    let text = String::from_utf8_lossy(&health.stdout).into_owned()
        + &String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");

    // Member IDs are stable across restarts (derived from peer URLs).
    let id_of = |t: &str, name: &str| {
        t.lines()
            .find(|l| l.contains(&format!(", {name}, ")))
            .map(|l| l.split(',').next().unwrap().to_string())
    };
    let list = run(&one, &["member", "list"]);
    let id = id_of(&list, "m1").unwrap();
    c.restart(1).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let list2 = run(&one, &["member", "list"]);
    assert_eq!(id_of(&list2, "m1").unwrap(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_remove_then_add_fresh_member_keeps_accepting_writes() {
    let mut c = Cluster::start(program(), 3, &[]).await;
    wait_published(&mut c, &["m0", "m1", "m2"]).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let victim = (leader + 1) % 3;
    let keep = (leader + 2) % 3;
    let ep = c.members[keep].endpoint.clone();
    let mut client = kv(&ep).await;
    client
        .put(PutRequest {
            key: "before".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Remove a member, then stop its process.
    let list = run(&ep, &["member", "list"]);
    let victim_name = c.members[victim].name.clone();
    let victim_id = list
        .lines()
        .find(|l| l.contains(&format!(", {victim_name}, ")))
        .map(|l| l.split(',').next().unwrap().to_string())
        .unwrap();
    let out = run(&ep, &["member", "remove", &victim_id]);
    assert!(out.contains("removed from cluster"), "{out}");
    c.kill9(victim);
    let list = run(&ep, &["member", "list"]);
    assert_eq!(list.lines().filter(|l| !l.is_empty()).count(), 2, "{list}");

    // Add a fresh member the etcd way and start it with what etcdctl printed.
    let new = c.plan_member("m3");
    let peer = c.members[new].peer_url.clone();
    let out = run(
        &ep,
        &["member", "add", "m3", &format!("--peer-urls={peer}")],
    );
    let initial = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out}"));
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    c.start_existing(new, &initial).await;

    // The new member catches up, publishes itself, and takes writes.
    let new_ep = c.members[new].endpoint.clone();
    let mut via_new = kv(&new_ep).await;
    wait_for(
        "a write through the new member",
        Duration::from_secs(30),
        || {
            let mut via_new = via_new.clone();
            async move {
                via_new
                    .put(PutRequest {
                        key: "after".into(),
                        value: "2".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()
            }
        },
    )
    .await;
    client
        .put(PutRequest {
            key: "after2".into(),
            value: "3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = via_new
        .range(RangeRequest {
            key: "a".into(),
            range_end: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<String> = r
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    assert_eq!(keys, ["after", "after2", "before"]);
    let now: Vec<String> = (0..c.members.len())
        .filter(|i| *i != victim)
        .map(|i| c.members[i].name.clone())
        .collect();
    let now: Vec<&str> = now.iter().map(String::as_str).collect();
    wait_published(&mut c, &now).await;
    let names: Vec<String> = {
        let list = run(&new_ep, &["member", "list"]);
        list.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(", ").nth(2).unwrap().to_string())
            .collect()
    };
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"m3".to_string()), "{names:?}");
    let (rev, hashes) = converged_hashes(&mut c).await;
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "HashKV differs at revision {rev}: {hashes:?}"
    );
    assert!(status(&new_ep).await.unwrap().leader != 0);
}

//! Replies of every size class, pipelined on one NBD connection: small ones (up to 64 KiB)
//! go out through the connection's reply queue, medium ones (up to 4 MiB) are read whole
//! first, large ones stream under the send lock, which a waiting large reply is handed
//! ahead of more rounds of the queue. Whatever order they finish in, every request must get
//! exactly one reply, with its own data, and none may be left behind in the queue.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

const SIZE: u64 = 64 * MIB;

/// (offset, length) of each read of one round: large, then small ones, then medium and
/// the small/medium boundary, so that small replies queue while a large one waits.
fn round(r: u64) -> Vec<(u64, u32)> {
    let at =
        |i: u64, align: u64| (r * 7919 + i * 104_729) * 4096 % (SIZE - 8 * MIB) / align * align;
    let mut v = vec![(at(0, MIB), (8 * MIB) as u32)];
    v.extend((1..=40).map(|i| (at(i, 4096), 4096)));
    v.push((at(41, 4096), (MIB) as u32));
    v.push((at(42, 4096), (64 * KIB) as u32));
    v.push((at(43, 4096), (64 * KIB + 4096) as u32));
    v.extend((44..=60).map(|i| (at(i, 512), 512)));
    v
}

/// A work directory with a seeded source volume, and the source's bytes to check replies by.
fn sample(name: &str, seed: u64) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = test_dir(name);
    let source = dir.path().join("source.img");
    make_source(&source, SIZE, seed);
    let expected = std::fs::read(&source).expect("read source");
    (dir, source, expected)
}

#[test]
fn pipelined_reads_of_every_size_each_get_one_reply_with_their_data() {
    let (dir, source, expected) = sample("nbd-replies", 21);
    // Mid-migration: some reads wait for on-demand fetches, so replies finish out of order.
    let h = Harness::start(dir.path(), &source, Opts::default().rate("4M"));
    h.assert_mid_migration();

    let c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let mut tx = c.s.try_clone().expect("clone socket");
    let mut rx = c.s;
    rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();

    const ROUNDS: u64 = 12;
    let mut asked: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut requests = Vec::new();
    let mut cookie = 0u64;
    for r in 0..ROUNDS {
        for (offset, len) in round(r) {
            cookie += 1;
            asked.insert(cookie, (offset, len));
            requests.extend_from_slice(&nbd::encode_request(nbd::CMD_READ, cookie, offset, len));
        }
    }
    // All requests at once, from another thread: the frontend takes at most 128 at a time,
    // so the sender blocks until replies are read here.
    let sender = std::thread::spawn(move || tx.write_all(&requests));

    let mut data = Vec::new();
    let mut answered = 0usize;
    while !asked.is_empty() {
        let mut head = [0u8; 16];
        if let Err(e) = rx.read_exact(&mut head) {
            panic!(
                "{} of {} replies never came ({e}); first missing cookies {:?}\nfrontend stderr:\n{}",
                asked.len(),
                asked.len() + answered,
                {
                    let mut left: Vec<_> = asked.keys().copied().collect();
                    left.sort_unstable();
                    left.truncate(8);
                    left
                },
                h.frontend_stderr()
            );
        }
        assert_eq!(
            u32::from_be_bytes(head[0..4].try_into().unwrap()),
            nbd::SIMPLE_REPLY_MAGIC,
            "reply {answered}: not a simple reply (framing lost)"
        );
        let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(head[8..16].try_into().unwrap());
        let Some((offset, len)) = asked.remove(&cookie) else {
            panic!("reply {answered}: cookie {cookie} was not asked for, or answered twice");
        };
        assert_eq!(errno, 0, "read of {len} bytes at {offset} failed");
        data.resize(len as usize, 0);
        rx.read_exact(&mut data).expect("reply payload");
        let want = &expected[offset as usize..offset as usize + len as usize];
        if data != want {
            let at = data.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!("cookie {cookie}: {len} bytes at {offset} differ from the source at +{at}");
        }
        answered += 1;
    }
    sender
        .join()
        .expect("sender thread")
        .expect("send requests");
    assert_eq!(answered as u64, ROUNDS * round(0).len() as u64);
    // Nothing more arrives: no reply was sent twice.
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut extra = [0u8; 1];
    match rx.read(&mut extra) {
        Ok(0) => panic!("the frontend closed the connection"),
        Ok(_) => panic!("bytes after the last reply"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

/// A large reply streams while the client does not read, so it holds the send lock; small
/// reads sent meanwhile finish and queue behind it; then nothing more is asked. The large
/// reply's holder must send the queue when it lets the lock go: no later reply would.
#[test]
fn small_replies_queued_behind_a_blocked_large_reply_are_sent_when_it_ends() {
    let (dir, source, expected) = sample("nbd-queued-tail", 22);
    let h = Harness::start(dir.path(), &source, Opts::default());
    h.wait_status("hydrated", Duration::from_secs(60), |st| {
        st["chunks_untouched"] == 0
    });
    let c = nbd::Client::connect(&h.sock, &h.opts.volume);
    let mut s = c.s;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let read_req = |cookie, offset, len| nbd::encode_request(nbd::CMD_READ, cookie, offset, len);
    // A large reply (streamed under the lock), then medium ones (read whole, then sent under
    // it, in segments or in one send): each blocks on the unread socket (its buffer is far
    // smaller) while small replies queue behind it.
    for (base, large) in [(1u64, 16 * MIB), (100, 4 * MIB), (200, MIB)].map(|(b, l)| (b, l as u32))
    {
        s.write_all(&read_req(base, 0, large))
            .expect("send large read");
        // Its header arrives once it holds the send lock; the socket then fills and it blocks.
        let mut head = [0u8; 16];
        s.read_exact(&mut head).expect("large reply header");
        assert_eq!(u64::from_be_bytes(head[8..16].try_into().unwrap()), base);
        assert_eq!(u32::from_be_bytes(head[4..8].try_into().unwrap()), 0);
        const SMALL: u64 = 24;
        let small_at = |i: u64| 32 * MIB + i * 20 * KIB;
        let mut reqs = Vec::new();
        for i in 0..SMALL {
            reqs.extend_from_slice(&read_req(base + 1 + i, small_at(i), 4096));
        }
        s.write_all(&reqs).expect("send small reads");
        // Time for them to be read, served and queued behind the large reply.
        std::thread::sleep(Duration::from_millis(500));
        let mut data = vec![0u8; large as usize];
        s.read_exact(&mut data).expect("large reply payload");
        assert!(data == expected[..large as usize], "large reply differs");
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..SMALL {
            if let Err(e) = s.read_exact(&mut head) {
                panic!(
                    "only {n} of {SMALL} small replies came after the {large} byte reply ({e}): \
                     the rest stayed queued\nfrontend stderr:\n{}",
                    h.frontend_stderr()
                );
            }
            assert_eq!(
                u32::from_be_bytes(head[0..4].try_into().unwrap()),
                nbd::SIMPLE_REPLY_MAGIC
            );
            assert_eq!(u32::from_be_bytes(head[4..8].try_into().unwrap()), 0);
            let cookie = u64::from_be_bytes(head[8..16].try_into().unwrap());
            assert!(
                (base + 1..base + 1 + SMALL).contains(&cookie),
                "cookie {cookie}"
            );
            assert!(seen.insert(cookie), "cookie {cookie} answered twice");
            let mut block = [0u8; 4096];
            s.read_exact(&mut block).expect("small reply payload");
            let at = small_at(cookie - base - 1) as usize;
            assert!(
                block[..] == expected[at..at + 4096],
                "cookie {cookie}: wrong data"
            );
        }
    }
}

//! How long a common-password lookup takes: `cargo run --release -p broker-auth-common-passwords
//! --example lookup -- [rounds]`. Prints the time to unpack the list and a table of
//! nanoseconds per lookup (median and worst round) for passwords on the list and off it.

use std::hint::black_box;
use std::time::Instant;

use broker_auth_common_passwords::CommonPasswords;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(20);

    let started = Instant::now();
    let list = CommonPasswords::get();
    let load = started.elapsed();
    println!(
        "unpacked {} passwords in {:.1} ms\n",
        list.len(),
        load.as_secs_f64() * 1e3
    );

    let on_list: Vec<String> = [
        "password",
        "12345678",
        "iloveyou",
        "sunshine",
        "princess",
        "football",
        "baseball",
        "trustno1",
        "superman",
        "qwertyuiop",
        "starwars",
        "whatever",
        "zaq12wsx",
        "computer",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let off_list: Vec<String> = (0..1000)
        .map(|i| format!("correct horse battery staple {i}"))
        .collect();
    let mixed_case: Vec<String> = on_list.iter().map(|s| s.to_uppercase()).collect();
    let non_ascii: Vec<String> = (0..1000).map(|i| format!("Pässwörd-Ünïqué-{i}")).collect();
    let long: Vec<String> = (0..100)
        .map(|i| format!("{i}{}", "𝄞".repeat(120)))
        .collect();

    println!("| passwords | lookups per round | median ns/lookup | worst ns/lookup |");
    println!("|---|---:|---:|---:|");
    for (label, passwords, expected) in [
        ("on the list (lowercase)", &on_list, true),
        ("on the list (uppercase)", &mixed_case, true),
        ("not on the list", &off_list, false),
        ("not on the list, non-ASCII mixed case", &non_ascii, false),
        ("not on the list, 120 four-byte characters", &long, false),
    ] {
        let per_round = 100_000;
        let mut samples: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                for i in 0..per_round {
                    let password = &passwords[i % passwords.len()];
                    assert_eq!(black_box(list.contains(black_box(password))), expected);
                }
                started.elapsed().as_nanos() as f64 / per_round as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let worst = samples[samples.len() - 1];
        println!("| {label} | {per_round} | {median:.0} | {worst:.0} |");
    }
}

//! Shows how Meshanics reads what an operator types or pastes (image references, registry
//! names, browser URLs) and which platform this machine is:
//!
//! ```text
//! cargo run -p meshanics-facade --example normalize -- nginx https://hub.docker.com/r/bitnami/redis/tags
//! ```
//!
//! With no arguments it explains a few typical inputs.

use meshanics_facade::connections::pasted;
use meshanics_shared::Platform;

fn main() {
    let mut inputs: Vec<String> = std::env::args().skip(1).collect();
    if inputs.is_empty() {
        inputs = [
            "nginx",
            "bitnami/redis:7.2",
            "index.docker.io/library/nginx:1.25",
            "https://hub.docker.com/_/nginx",
            "https://quay.io/repository/org/app?tab=tags",
            "https://github.com/orgs/acme/packages/container/package/app",
            "localhost:5000/team/app:v1",
            "Nginx",
        ]
        .map(String::from)
        .to_vec();
    }
    let here = Platform::detect();
    println!("this machine's platform: {here}");
    for input in inputs {
        match pasted::reference(&input) {
            Ok(r) => {
                let path = r.registry().path_form().unwrap_or_else(|| "-".into());
                println!(
                    "{input:<62} -> {r}\n{:<62}    registry {} (API host {}, facade path {path})",
                    "",
                    r.registry(),
                    r.registry().api_host()
                );
            }
            Err(e) => println!("{input:<62} -> refused: {e}"),
        }
    }
}

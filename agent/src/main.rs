use tollgate::{config::Config, ebpf::*};
fn main() {
    tracing_subscriber::fmt().init();
    let cfg = Config::default();
    let opts = LoadOptions { pins: PinDir::new("/sys/fs/bpf/tg-scratch"), maps: cfg.maps.clone(), cidrs: cfg.cidr_table() };
    match Dataplane::load(&opts) {
        Ok(mut dp) => { println!("loaded"); if std::env::args().nth(1).as_deref()==Some("attach") { dp.attach(std::path::Path::new("/sys/fs/cgroup/unified")).unwrap(); println!("attached"); } }
        Err(e) => { eprintln!("{e}"); let mut s: &dyn std::error::Error = &e; while let Some(x)=s.source(){ eprintln!("  caused by: {x:?}"); s=x;} }
    }
}

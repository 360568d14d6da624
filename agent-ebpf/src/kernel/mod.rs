//! Everything that runs in the kernel.

mod dns;
mod flowcache;
mod maps;
mod packet;
mod policy;
mod quarantine;
mod signals;
mod skb;
mod sock_addr;
mod stats;
mod storage;
mod stratum;
mod tc;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could panic.
    loop {}
}

/// The kernel refuses GPL-only helpers to non-GPL programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// The hypercore side of bench_gossip.py's catch-up part (issue 4): two hypercores
// replicating the same blocks over TCP on 127.0.0.1, one process each.
//
//   node gossip_bench_hypercore.js serve --entries FILE --dir DIR
//       Appends every block of FILE (4-byte big-endian length, then the bytes:
//       the signed p2pblog entries of the Python side's feed) to a new core in
//       DIR, then listens on 127.0.0.1:0 and replicates to whoever connects.
//       Prints one JSON line when ready: {"port", "key", "length", "build_seconds"}.
//       Runs until killed (bench_gossip.py kills it).
//
//   node gossip_bench_hypercore.js fetch --port P --key HEX --dir DIR --expect N --timeout S
//       Opens an empty core for KEY in DIR, connects, and downloads blocks
//       0..N-1.  Prints one JSON line: {"seconds", "first_block_seconds",
//       "length", "contiguous_length", "cpu_user_seconds", "cpu_system_seconds"};
//       the clock starts just before the TCP connect.  Exits 2 if the
//       download did not finish within S seconds.
//
// Nothing else is printed on stdout.  Only 127.0.0.1 is ever contacted.

'use strict'

const fs = require('fs')
const net = require('net')
const Hypercore = require('hypercore')

function parseArgs (argv) {
  const opts = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error('bad arguments: ' + argv.join(' '))
    opts[argv[i].slice(2)] = argv[i + 1]
  }
  return opts
}

function readBlocks (file) {
  const data = fs.readFileSync(file)
  const blocks = []
  let at = 0
  while (at < data.length) {
    const size = data.readUInt32BE(at)
    blocks.push(data.subarray(at + 4, at + 4 + size))
    at += 4 + size
  }
  return blocks
}

function now () {
  return Number(process.hrtime.bigint()) / 1e9
}

async function serve (opts) {
  const blocks = readBlocks(opts.entries)
  const core = new Hypercore(opts.dir)
  await core.ready()
  const start = now()
  const batch = 1000
  for (let i = 0; i < blocks.length; i += batch) {
    await core.append(blocks.slice(i, i + batch))
  }
  const buildSeconds = now() - start
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    const stream = core.replicate(false)
    stream.on('error', () => {})
    socket.pipe(stream).pipe(socket)
  })
  server.listen(0, '127.0.0.1', () => {
    const out = { port: server.address().port, key: core.key.toString('hex'), length: core.length, build_seconds: buildSeconds }
    process.stdout.write(JSON.stringify(out) + '\n')
  })
}

async function fetch (opts) {
  const expect = Number(opts.expect)
  const timeout = Number(opts.timeout) * 1000
  const core = new Hypercore(opts.dir, Buffer.from(opts.key, 'hex'))
  await core.ready()
  const timer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ error: 'timeout', contiguous_length: core.contiguousLength }) + '\n')
    process.exit(2)
  }, timeout)
  let firstBlock = null
  core.once('download', () => { firstBlock = now() })
  const cpu0 = process.cpuUsage()
  const start = now()
  const socket = net.connect(Number(opts.port), '127.0.0.1')
  socket.on('error', (err) => { console.error(err); process.exit(1) })
  const stream = core.replicate(true)
  stream.on('error', () => {})
  socket.pipe(stream).pipe(socket)
  const range = core.download({ start: 0, end: expect })
  await range.done()
  const seconds = now() - start
  const cpu = process.cpuUsage(cpu0)
  clearTimeout(timer)
  const out = {
    seconds,
    first_block_seconds: firstBlock === null ? null : firstBlock - start,
    length: core.length,
    contiguous_length: core.contiguousLength,
    cpu_user_seconds: cpu.user / 1e6,
    cpu_system_seconds: cpu.system / 1e6
  }
  process.stdout.write(JSON.stringify(out) + '\n')
  socket.destroy()
  await core.close()
  process.exit(0)
}

const [mode, ...rest] = process.argv.slice(2)
const run = mode === 'serve' ? serve : mode === 'fetch' ? fetch : null
if (run === null) {
  console.error('usage: gossip_bench_hypercore.js serve|fetch --option value ...')
  process.exit(64)
}
run(parseArgs(rest)).catch((err) => {
  console.error(err)
  process.exit(1)
})

'use strict';
// Downloads firmware from iot-ota-server with node-coap (npm `coap`, the
// library of the reference server), leaving the block-wise transfer to
// node-coap's own agent. Run by tests/node_coap.rs, which compares the
// files written here byte for byte with the images it generated.
//
// Usage: node download.js JOBS_JSON
//   JOBS_JSON = {"host": "::1", "port": 5683, "jobs": [JOB, ...]}
//   JOB = {"name": "...", "out": "/path/file", "timeout_ms": 20000,
//          "mode": "legacy" | "id" | "query",
//          "pid": "P", "type": 3, "version": 0, "offset": 0,   (legacy)
//          "id": "8hexdigs",                                   (id)
//          "query": "pid=P&type=APP&version=0.0.0",            (query)
//          "szx": 6 | null,                  Block2 SZX of the first request
//          "num": 0}                         and its NUM (with szx only)
//
// node-coap's agent (lib/agent.js, `_handle`) does Block2 by itself: on a
// response whose Block2 has M set it sends the same request again with a
// new Message ID, the same token, Block2 NUM+1 at the response's size and
// *no payload*, and emits one 'response' with the concatenated body. So
// the legacy protocol through node-coap relies on the server remembering
// the device payload of block 0 (the payload-less continuation README describes).
//
// For each job one line of JSON goes to stdout: {"name", "code", "bytes",
// "content_format"} or {"name", "error"}. The exit code is 0 when every job
// got an answer (whatever its code: the Rust side judges), 1 otherwise.

const coap = require('coap');
const fs = require('fs');
const net = require('net');

function devicePayload(job) {
  const pid = Buffer.from(job.pid, 'latin1');
  const withOffset = job.offset !== undefined && job.offset !== null;
  const buf = Buffer.alloc(1 + pid.length + 1 + 4 + (withOffset ? 4 : 0));
  let at = 0;
  buf.writeUInt8(pid.length, at); at += 1;
  pid.copy(buf, at); at += pid.length;
  buf.writeUInt8(job.type, at); at += 1;
  buf.writeUInt32LE(job.version >>> 0, at); at += 4;
  if (withOffset) {
    buf.writeUInt32LE(job.offset >>> 0, at);
  }
  return buf;
}

// A Block2 option value with M clear, in the fewest bytes (RFC 7959 §2.2).
function block2Value(num, szx) {
  const value = num * 16 + szx;
  if (value < 0x100) return Buffer.of(value);
  if (value < 0x10000) return Buffer.of(value >> 8, value & 0xff);
  return Buffer.of(value >> 16, (value >> 8) & 0xff, value & 0xff);
}

function runJob(host, port, job) {
  return new Promise((resolve) => {
    const agent = new coap.Agent({ type: net.isIPv6(host) ? 'udp6' : 'udp4' });
    let settled = false;
    const finish = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // The agent closes its socket by itself once its last request got a
      // response; only a job that failed may leave it open.
      if (result.error) {
        try {
          agent.close();
        } catch (err) {
          // Already closed: nothing to release.
        }
      }
      resolve(result);
    };
    const timer = setTimeout(
      () => finish({ name: job.name, error: `no complete answer in ${job.timeout_ms} ms` }),
      job.timeout_ms || 20000,
    );
    const params = { hostname: host, port, method: 'GET', confirmable: true, agent };
    let payload = null;
    if (job.mode === 'legacy') {
      params.pathname = '/updates';
      payload = devicePayload(job);
    } else if (job.mode === 'id') {
      params.pathname = `/updates/${job.id}`;
    } else if (job.mode === 'query') {
      params.pathname = '/updates';
      params.query = job.query;
    } else {
      finish({ name: job.name, error: `unknown mode ${job.mode}` });
      return;
    }
    const req = coap.request(params);
    if (job.szx !== undefined && job.szx !== null) {
      // Block2 on the first request: the SZX asked for (RFC 7959 §2.4
      // early negotiation) and NUM (0 unless the job starts further on).
      req.setOption('Block2', block2Value(job.num || 0, job.szx));
    }
    req.on('response', (res) => {
      const body = res.payload || Buffer.alloc(0);
      const cf = res.options.find((o) => o.name === 'Content-Format');
      if (job.out) {
        fs.writeFileSync(job.out, body);
      }
      finish({
        name: job.name,
        code: res.code,
        bytes: body.length,
        content_format: cf ? String(cf.value) : null,
        text: res.code !== '2.05' || job.mode === 'query' ? body.toString('utf8') : undefined,
      });
    });
    req.on('error', (err) => finish({ name: job.name, error: String(err) }));
    req.on('timeout', (err) => finish({ name: job.name, error: `timeout: ${err}` }));
    if (payload) {
      req.write(payload);
    }
    req.end();
  });
}

async function main() {
  const spec = JSON.parse(process.argv[2] || '{}');
  let ok = true;
  for (const job of spec.jobs || []) {
    const result = await runJob(spec.host, spec.port, job);
    if (result.error) ok = false;
    process.stdout.write(`${JSON.stringify(result)}\n`);
  }
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  process.stdout.write(`${JSON.stringify({ error: String(err) })}\n`);
  process.exit(1);
});

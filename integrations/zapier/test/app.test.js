// The Zapier app against the real relay binary, through zapier-platform-core's own app tester:
// authentication test, subscribe (with a real-shaped hooks.zapier.com target URL, which a relay
// with default settings must accept), perform, performList and unsubscribe.
//
// RELAY_BIN names the binary (`cargo build` puts it at target/debug/stencil-relay). The relay
// runs on loopback with an embedded SQLite file in a temporary folder and default target
// settings; nothing is ever delivered to Zapier (events are posted before any subscription).

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { after, before, test } = require('node:test');

const zapier = require('zapier-platform-core');
const App = require('../index');

const appTester = zapier.createAppTester(App);
const ADMIN_TOKEN = 'zapier-app-test-admin-token';
const BIN = process.env.RELAY_BIN || path.join(__dirname, '..', '..', '..', 'target', 'debug', 'stencil-relay');
const STENCIL_PAYLOAD = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'fixtures', 'payloads', 'stencil-image-created.json'));
const ZAP_TARGET = 'https://hooks.zapier.com/hooks/standard/1234567/0a1b2c3d4e5f67890a1b2c3d4e5f6789/';

let relay;
let base;
let connection;

const call = async (method, route, token, body, headers = {}) => {
  const response = await fetch(`${base}${route}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json', ...headers },
    body,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
};

// Stencil's documented payload, made unique the way Stencil's are: by the image's URLs.
const stencilPayload = (tag) => Buffer.from(STENCIL_PAYLOAD.toString().replaceAll('19da5632-feef-4abd-a28a-e3dfa6077429', tag));

before(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-zapier-'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RELAY_')));
  relay = spawn(BIN, ['serve'], {
    env: {
      ...env,
      RELAY_LISTEN: '127.0.0.1:0',
      RELAY_DATABASE_URL: `sqlite://${path.join(dir, 'relay.db')}`,
      RELAY_ADMIN_TOKEN: ADMIN_TOKEN,
      RELAY_LOG_FORMAT: 'json',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the relay did not report its address')), 15000);
    readline.createInterface({ input: relay.stderr }).on('line', (line) => {
      try {
        const entry = JSON.parse(line);
        if (entry.message === 'listening') {
          clearTimeout(timer);
          resolve(`http://${entry.addr}`);
        }
      } catch (e) {
        // not a JSON log line
      }
    });
    relay.on('exit', (code) => reject(new Error(`the relay exited with ${code}`)));
  });
  process.env.RELAY_URL = base;
  const created = await call('POST', '/admin/v1/connections', ADMIN_TOKEN, JSON.stringify({ name: 'Spring shop', ingest_auth: 'token' }));
  assert.equal(created.status, 201);
  connection = created.body;
  for (const [tag, template] of [['zap-one', 'tpl-A'], ['zap-two', 'tpl-B']]) {
    const accepted = await call('POST', `/v1/ingest/${connection.id}?template_id=${template}`, null, stencilPayload(tag), {
      authorization: `Bearer ${connection.signing_secret}`,
    });
    assert.equal(accepted.status, 202);
  }
});

after(() => {
  if (relay) relay.kill();
});

const bundle = (extra = {}) => ({ authData: { apiKey: connection.api_key }, inputData: {}, ...extra });

test('authentication.test answers with the connection, and the label reads a field it returned', async () => {
  const result = await appTester(App.authentication.test, bundle());
  assert.equal(result.id, connection.id);
  assert.equal(result.name, 'Spring shop');
  assert.match(App.authentication.connectionLabel, /\{\{bundle\.inputData\.name\}\}/);
});

test('authentication.test refuses a wrong key', async () => {
  await assert.rejects(appTester(App.authentication.test, { authData: { apiKey: 'sk_wrong' }, inputData: {} }), /API key/);
});

test('subscribe, perform, performList and unsubscribe against the relay', async () => {
  const trigger = App.triggers.new_image.operation;
  const subscribeData = await appTester(trigger.performSubscribe, bundle({ targetUrl: ZAP_TARGET, inputData: { template_id: 'tpl-A' } }));
  assert.match(subscribeData.id, /^hk_/);
  assert.equal(subscribeData.url, ZAP_TARGET);
  assert.equal(subscribeData.template_id, 'tpl-A');
  const hooks = await call('GET', '/v1/hooks', connection.api_key);
  assert.deepEqual(hooks.body.data.map((h) => h.id), [subscribeData.id]);

  const listed = await appTester(trigger.performList, bundle({ inputData: { template_id: 'tpl-A' } }));
  assert.equal(listed.length, 1, 'only the Zap\'s template');
  assert.equal(listed[0].id, crypto.createHash('sha256').update(stencilPayload('zap-one')).digest('hex'));
  assert.match(listed[0].image_url_jpg, /zap-one\.jpeg$/);
  const all = await appTester(trigger.performList, bundle());
  assert.equal(all.length, 2);
  assert.ok(all.every((item) => typeof item.id === 'string' && item.id.length === 64), 'every item has an id');

  const delivery = stencilPayload('zap-three');
  const webhookId = crypto.createHash('sha256').update(delivery).digest('hex');
  const items = await appTester(
    trigger.perform,
    bundle({
      cleanedRequest: JSON.parse(delivery),
      rawRequest: { content: delivery.toString(), headers: { 'Http-Webhook-Id': webhookId } },
    }),
  );
  assert.equal(items.length, 1);
  assert.equal(items[0].id, webhookId);
  assert.equal(items[0].status, 'completed');
  const sampleKeys = Object.keys(trigger.sample).sort();
  assert.deepEqual(Object.keys(items[0]).sort(), sampleKeys, 'a delivered item has the sample\'s fields');

  const unsubscribed = await appTester(trigger.performUnsubscribe, bundle({ subscribeData }));
  assert.deepEqual(unsubscribed, {});
  assert.deepEqual((await call('GET', '/v1/hooks', connection.api_key)).body.data, []);
  const again = await appTester(trigger.performUnsubscribe, bundle({ subscribeData }));
  assert.deepEqual(again, {}, 'a repeated unsubscribe is not an error');
});

// REST Hook trigger "New Image": subscribe attaches the Zap's URL to the relay, unsubscribe
// detaches it, perform turns a delivery into one item, performList shows recent real events.
// Items carry the relay's event id as `id` (Zapier deduplicates by it): for Stencil's payloads,
// which have no id, that is the SHA-256 of the body, the same value the relay sends as
// `webhook-id` with every delivery.
const crypto = require('crypto');
const { baseUrl } = require('../config');
const sample = require('../samples/image-created.json');

const subscribe = (z, bundle) =>
  z
    .request({
      method: 'POST',
      url: `${baseUrl()}/v1/hooks`,
      body: { target_url: bundle.targetUrl, event: 'image.created', template_id: bundle.inputData.template_id || null },
    })
    .then((response) => response.data);

// Detach is idempotent on the relay: a hook already gone answers 204 too.
const unsubscribe = (z, bundle) =>
  z.request({ method: 'DELETE', url: `${baseUrl()}/v1/hooks/${bundle.subscribeData.id}` }).then(() => ({}));

// A header of the delivery, whatever case or `Http-` prefix the platform gives it.
const header = (bundle, name) => {
  const headers = (bundle.rawRequest && bundle.rawRequest.headers) || {};
  const wanted = [name, `http-${name}`];
  const key = Object.keys(headers).find((k) => wanted.includes(k.toLowerCase()));
  return key ? headers[key] : undefined;
};

const eventId = (bundle) => {
  const payload = bundle.cleanedRequest || {};
  if (typeof payload.id === 'string' && payload.id) return payload.id;
  const fromHeader = header(bundle, 'webhook-id');
  if (fromHeader) return fromHeader;
  const raw = bundle.rawRequest && bundle.rawRequest.content;
  return raw ? crypto.createHash('sha256').update(raw).digest('hex') : payload.image_url;
};

const perform = (z, bundle) => [{ ...bundle.cleanedRequest, id: eventId(bundle) }];

// The relay keeps the template with each event; a Zap narrowed to one template sees only its own.
const performList = (z, bundle) =>
  z.request({ method: 'GET', url: `${baseUrl()}/v1/events`, params: { limit: 100 } }).then((response) => {
    const wanted = bundle.inputData.template_id;
    return response.data.data
      .filter((event) => event.type === 'image.created')
      .filter((event) => !wanted || event.template_id === wanted)
      .slice(0, 10)
      .map((event) => ({ ...event.payload, id: event.id }));
  });

module.exports = {
  key: 'new_image',
  noun: 'Image',
  display: { label: 'New Image', description: 'Triggers when Stencil finishes an image in this project.' },
  operation: {
    type: 'hook',
    inputFields: [
      {
        key: 'template_id',
        label: 'Template ID',
        required: false,
        helpText: 'Only images made from this Stencil template. Leave empty for every template.',
      },
    ],
    performSubscribe: subscribe,
    performUnsubscribe: unsubscribe,
    perform,
    performList,
    sample,
    outputFields: [
      { key: 'id', label: 'Event ID' },
      { key: 'status', label: 'Status' },
      { key: 'image_url', label: 'Image URL (PNG)' },
      { key: 'image_url_jpg', label: 'Image URL (JPG)' },
      { key: 'modifications[]name', label: 'Modification: layer name' },
      { key: 'modifications[]text', label: 'Modification: text' },
      { key: 'modifications[]src', label: 'Modification: image source' },
    ],
  },
};

// REST Hook trigger "New Image": subscribe attaches the Zap's URL, unsubscribe detaches it,
// perform passes the delivered event through, performList shows recent real events.
const { BASE_URL } = require('../authentication');
const sample = require('../samples/image-created.json');

const subscribe = (z, bundle) =>
  z
    .request({
      method: 'POST',
      url: `${BASE_URL}/v1/hooks`,
      body: { target_url: bundle.targetUrl, event: 'image.created', template_id: bundle.inputData.template_id || null },
    })
    .then((response) => response.data);

const unsubscribe = (z, bundle) =>
  z.request({ method: 'DELETE', url: `${BASE_URL}/v1/hooks/${bundle.subscribeData.id}` }).then(() => ({}));

const perform = (z, bundle) => [bundle.cleanedRequest];

const performList = (z, bundle) =>
  z
    .request({ method: 'GET', url: `${BASE_URL}/v1/events`, params: { limit: 10 } })
    .then((response) => response.data.data.map((event) => event.payload));

module.exports = {
  key: 'new_image',
  noun: 'Image',
  display: { label: 'New Image', description: 'Triggers when Stencil finishes an image.' },
  operation: {
    type: 'hook',
    inputFields: [{ key: 'template_id', label: 'Template ID', required: false, helpText: 'Empty: every template.' }],
    performSubscribe: subscribe,
    performUnsubscribe: unsubscribe,
    perform,
    performList,
    sample,
    outputFields: [
      { key: 'id', label: 'Image ID' },
      { key: 'template_id', label: 'Template ID' },
      { key: 'status', label: 'Status' },
      { key: 'image_url', label: 'Image URL (PNG)' },
      { key: 'image_url_jpg', label: 'Image URL (JPG)' },
    ],
  },
};

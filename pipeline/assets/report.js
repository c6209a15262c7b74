(function () {
  var els = Array.prototype.slice.call(document.querySelectorAll('video, audio, img'));
  var pending = els.length, failed = 0;
  function finish() {
    document.body.setAttribute('data-media-errors', String(failed));
    document.body.setAttribute('data-media-ready', 'yes');
    var status = document.getElementById('media-status');
    if (status) {
      status.textContent = failed ? failed + ' of ' + els.length + ' media files could not load (marked below).'
                                  : 'All ' + els.length + ' media files loaded.';
      if (failed) status.className = 'bad';
    }
  }
  function settle(el, state, why) {
    if (el.hasAttribute('data-state')) return;
    el.setAttribute('data-state', state);
    if (state === 'loaded' && el.tagName !== 'IMG') {
      el.setAttribute('data-duration', String(el.duration));
      if (el.tagName === 'VIDEO') el.setAttribute('data-size', el.videoWidth + 'x' + el.videoHeight);
    }
    if (state === 'error') {
      failed += 1;
      var label = document.createElement('span');
      label.className = 'media-error';
      label.textContent = 'could not load ' + el.getAttribute('src') + (why ? ': ' + why : '');
      el.insertAdjacentElement('afterend', label);
    }
    pending -= 1;
    if (pending === 0) finish();
  }
  // A browser drops a track it cannot decode and plays the rest: a video without a picture is a failure.
  function metadata(el) {
    if (el.tagName === 'VIDEO' && !(el.videoWidth > 0)) settle(el, 'error', 'no video track this browser can decode');
    else settle(el, 'loaded');
  }
  function reason(el) { return el.error ? (el.error.message || 'media error ' + el.error.code) : ''; }
  els.forEach(function (el) {
    if (el.tagName === 'IMG') {
      var decoded = function () { settle(el, el.naturalWidth > 0 ? 'loaded' : 'error', 'not a decodable image'); };
      if (el.complete) { decoded(); return; }
      el.addEventListener('load', decoded);
      el.addEventListener('error', function () { settle(el, 'error', 'not found or not a decodable image'); });
      return;
    }
    if (el.error) { settle(el, 'error', reason(el)); return; }
    if (el.readyState >= 1) { metadata(el); return; }
    el.addEventListener('loadedmetadata', function () { metadata(el); });
    el.addEventListener('error', function () { settle(el, 'error', reason(el)); });
  });
  if (pending === 0) finish();
})();
